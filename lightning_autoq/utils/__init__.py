"""Small helpers shared by callbacks."""
