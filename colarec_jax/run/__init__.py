"""A run's assembly in its workdir: the cached stages before ColaRec (`stages`), the frozen bundle
of parts a run builds from them (`parts`), and its checkpoint store (`store`)."""
