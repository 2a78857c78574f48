"""The TaskStore: async tasks run and kept outside the router."""
