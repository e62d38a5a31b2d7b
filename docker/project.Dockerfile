# Your project on tuner's image: build tuner's first (`docker compose build`, which tags it
# tuner:latest), then this one from your project's folder, and run the cluster on it so that
# every node has your dependencies:
#
#   docker build -f /path/to/tuner/docker/project.Dockerfile -t my-project:latest .
#   TUNER_IMAGE=my-project:latest docker compose up -d --no-build
#
# Your code itself need not be in the image: `tuner run --ray-address` ships the study file's
# folder to the workers. Install it here only if you run `tuner worker` in these containers.
FROM tuner:latest
WORKDIR /project
COPY pyproject.toml ./
# Your extras (tuner's adapters: tuner[lightning], tuner[transformers]) and your dependencies.
RUN pip install --no-cache-dir .
