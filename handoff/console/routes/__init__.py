"""The console API's routes, one module a section; ``handoff.console.api`` puts them together."""
