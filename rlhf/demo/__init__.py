"""The bundled demo: a synthetic instruction task, its gold scorer, simulated labelers, a tiny model."""
