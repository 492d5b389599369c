"""The only code that talks to a Docker engine, and the docker-archive format."""
