"""Training of the V2EM branches and fusion (used by build/train.py and build/evaluate.py)."""
