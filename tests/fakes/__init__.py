"""Test fakes: a scripted OpenAI-compatible upstream and made-up evaluation matrices."""
