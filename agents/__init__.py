"""stable-baselines3 agents for the bit-width search, built from ``conf/agent/`` by :func:`make_agent`."""

from agents.factory import AGENTS, DecayingTruncatedNormalNoise, make_agent

__all__ = ["AGENTS", "DecayingTruncatedNormalNoise", "make_agent"]
