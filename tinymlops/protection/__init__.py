"""Protecting a model once it is on a device: extraction detection per client (`prada`) and output policies
(`outputs`, `policy`).  Pure: the agent (`tinymlops.agent.device`) feeds them and applies what they decide."""
