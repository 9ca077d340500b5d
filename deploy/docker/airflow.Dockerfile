# Airflow 3 with tsad installed, for the retraining DAGs in dags/. Build from the repository root:
#   docker build -f deploy/docker/airflow.Dockerfile -t tsad-airflow:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

USER airflow
COPY --chown=airflow:root requirements.lock pyproject.toml README.md /opt/tsad/
RUN grep -v '^apache-airflow' /opt/tsad/requirements.lock > /tmp/requirements.txt \
 && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
      "apache-airflow==3.3.2" -r /tmp/requirements.txt
COPY --chown=airflow:root pipeline /opt/tsad/pipeline
COPY --chown=airflow:root models /opt/tsad/models
RUN pip install --no-cache-dir --no-deps /opt/tsad
COPY --chown=airflow:root dags /opt/airflow/dags
