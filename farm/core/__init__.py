"""The core every part of the farm may import: settings, states, printer models, the HTTP
client, design inspection. It imports nothing else of the project."""
