"""Agents: the model seam (llm), the local model catalog and servers, and the Agent itself."""
