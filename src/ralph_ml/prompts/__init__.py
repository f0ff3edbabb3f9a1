"""Prompt templates of the LLM and coding agents (``string.Template``, ``$name`` placeholders).

Copy any of these files into a folder and set ``agents.llm.prompts_dir`` to override them
per experiment; a file missing there falls back to the packaged one.
"""
