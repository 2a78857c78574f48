"""The ground floor: typed errors and the strict pydantic base. Imports nothing of the project."""
