"""Runners: one small class per backend with the same life cycle (activate, infer on name -> array, close)."""
