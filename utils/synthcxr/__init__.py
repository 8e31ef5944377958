"""SynthCXR: a procedurally generated medical-report-grounding benchmark (see README, SynthCXR)."""
