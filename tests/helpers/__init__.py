"""Code several test modules share: constants of the generated source, references, fakes.

Test modules import from here, never from one another or from conftest.py; what needs setting up
and tearing down (servers, sources, homes) is a fixture in conftest.py."""
