"""A trained model for its users: the Python API (`recommender`), batch export and HTTP serving."""
