"""Sweeps: the sweep file (`spec`), what to run next (`plan`), the results store and what it imports
(`store`, `importing`), where runs execute (`executors`, with their device scheduling), and the report."""
