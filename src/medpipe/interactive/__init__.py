"""Interactive evaluation of SAM-family models: 2D iterative prompting and 3D prompt propagation."""
