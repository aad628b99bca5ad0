"""Studies over seeds and variants (`variants`, `runner`), their reports (`report`), and the
diagnostics that say why a trained model ranks as it does (`diagnose`)."""
