"""The offline procedural evaluation suite: scene drawers, textures, handwritten digits, seeded image shifts and
the dataset list itself (suite.py). evaluation.tasks is the registry the rest of the code imports."""
