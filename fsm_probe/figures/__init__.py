"""Plotly figures for fsm_probe analyses."""
