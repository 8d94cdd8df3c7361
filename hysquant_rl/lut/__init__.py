"""The sensitivity lookup table (paper section 3.2) and its pruning rules (section 4).

``table``: the LUT and its ``lut.json`` document; ``prune``: the rules that turn it into allowed bit ranges;
``build``: the cached build of every (layer, configuration) job; ``executor``: those jobs in-process or on Ray
actors; ``replay``: skipping the FP32 start of a job's forward pass; ``report``: heatmap, files, logs.
"""
