# spatiome in a pinned environment: Python 3.11 and the dependency versions of constraints.txt.
#   docker build -t spatiome .
#   docker run --rm -v "$PWD:/work" spatiome run /work/run.toml
# The install and smoke-test steps are the README's (tests/test_container.py keeps them so).
FROM python:3.11.7-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/opt/spatiome/constraints.txt \
    MPLBACKEND=Agg \
    NUMBA_CACHE_DIR=/tmp/numba-cache

WORKDIR /opt/spatiome
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src

# README: install and run the main job on the built-in example
RUN pip install . && spatiome demo --out demo_out --no-progress && rm -rf demo_out

WORKDIR /work
ENTRYPOINT ["spatiome"]
CMD ["--help"]
