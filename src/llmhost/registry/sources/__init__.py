"""registry/sources"""
