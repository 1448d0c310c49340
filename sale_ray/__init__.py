"""sale-ray: a Ray-native strategy-auction router for pools of LLM agents.

Importing the package is cheap and needs no network, key or cluster: Ray, model servers and
HTTP clients are started only by the functions that need them.
"""

__version__ = "0.1.0"
