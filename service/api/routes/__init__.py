"""Route modules: classify, memories, health."""
