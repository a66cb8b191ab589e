"""Constants shared by the task tests: the papers' lengths and minerva_math's seven subjects."""

# Learn2PD reports 256 and 1024, Fast-dLLM 256 and 512 (shared/notes/published.md).
LENGTHS = (256, 512, 1024)
MINERVA_SUBJECTS = (
    "algebra",
    "counting_and_prob",
    "geometry",
    "intermediate_algebra",
    "num_theory",
    "prealgebra",
    "precalc",
)
