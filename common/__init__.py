"""The ground floor: errors, file helpers and hashing that every other package may import.

Nothing here imports any other module of this project (an import contract in CI checks it).
"""
