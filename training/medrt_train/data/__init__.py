"""Readers for the data sets medrt trains, calibrates and evaluates on."""
