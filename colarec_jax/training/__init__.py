"""Training ColaRec: the four losses, the initial state, the multi-task step and the loop."""
