"""Hardware-in-the-loop: the same DFU and gateway tests against a simulated peripheral or a real board."""
