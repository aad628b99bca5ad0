"""Items that arrive after training: indexed from their text into an overlay on the trained GIDs
(`indexing`), joined to what a run ranks (`catalogue`), and the held-out-items protocol that
measures it (`coldstart`)."""
