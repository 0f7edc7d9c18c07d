# One image for the API, the lrtune worker and the Ray nodes, so trial code imports everywhere.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/lrtune
ENV PATH=/opt/lrtune/bin:$PATH
# torch first, pinned: the rest must not pull another build in.
RUN pip install --no-cache-dir torch==2.13.0
COPY . /src
# Editable, so lrtune finds migrations/ beside its code at /src in the final image too.
RUN pip install --no-cache-dir -e .

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 lrtune \
    && mkdir -p /var/lib/lrtune /var/lib/lrtune-runs \
    && chown lrtune /var/lib/lrtune /var/lib/lrtune-runs
COPY --from=build /opt/lrtune /opt/lrtune
COPY --from=build /src /src
ENV PATH=/opt/lrtune/bin:$PATH \
    LRTUNE_HOME=/var/lib/lrtune \
    PYTHONUNBUFFERED=1
WORKDIR /src
USER lrtune
EXPOSE 8000
CMD ["lrtune", "api", "--host", "0.0.0.0", "--port", "8000"]
