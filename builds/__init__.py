"""Build configurations, agents, builds and the Docker operations and pushed images of builds."""
