"""The embedded world: a seeded simulator of a platform's catalog, cover images and click logs.

``simulator.generate_world`` writes the raw tables and images; ``drawing`` draws the covers. The
hidden truth behind the clicks (``oracle``) is deliberately not re-exported here: only the simulator
and evaluation code may import it (docs/architecture.md, "The embedded world and its oracle").
"""
