"""Commonsense data: task vocabularies, the prompt template, loading and tokenisation."""
