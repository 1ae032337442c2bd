"""Membership inference (dataset theft): was this record in the model's training set?"""
