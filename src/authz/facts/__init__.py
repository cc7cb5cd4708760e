"""Facts a decision depends on: who is asking, which app owns a resource, who may use it."""
