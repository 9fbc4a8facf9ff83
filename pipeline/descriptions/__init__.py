"""Fine-grained descriptions of each patient's pathology report (FiVE): question sets, the LLM that answers them,
and the per-case description table the FiVE methods train on. Torch-free."""
