"""Resources: where files live, and the model services (the generator and the judge)."""
