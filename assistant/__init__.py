"""The assistant: configuration, model loading, prompts, generation and the chat service the UI calls."""
