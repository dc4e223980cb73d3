"""keysched: spread Gemini API calls over a pool of keys and models."""
