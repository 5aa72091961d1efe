"""factory_boy factories for the models; secrets get obviously fake values."""

import factory
from django.utils import timezone

from builds.models import Agent, Build, BuildConfiguration, LoginConnection
from connections.models import Connection, Project


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project
        django_get_or_create = ("ident",)

    ident = factory.Sequence(lambda n: f"project-{n}")
    name = factory.LazyAttribute(lambda o: o.ident.title())


class RegistryConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Connection

    project = factory.SubFactory(ProjectFactory)
    ident = factory.Sequence(lambda n: f"registry-{n}")
    type = Connection.Type.DOCKER_REGISTRY
    registry = factory.Sequence(lambda n: f"registry{n}.example.test:5000")
    username = "ci"
    password = factory.Sequence(lambda n: f"s3cret-password-{n}")


class EcrConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Connection

    project = factory.SubFactory(ProjectFactory)
    ident = factory.Sequence(lambda n: f"ecr-{n}")
    type = Connection.Type.AMAZON_ECR
    region = "eu-west-1"
    credentials = Connection.Credentials.ACCESS_KEYS
    access_key_id = "AKIAIOSFODNN7EXAMPLE"
    secret_access_key = factory.Sequence(lambda n: f"wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET{n}")
    registry_id = "123456789012"


class BuildConfigurationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BuildConfiguration

    project = factory.SubFactory(ProjectFactory)
    ident = factory.Sequence(lambda n: f"config-{n}")
    name = factory.LazyAttribute(lambda o: o.ident)


class LoginConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LoginConnection

    configuration = factory.SubFactory(BuildConfigurationFactory)
    connection = factory.SubFactory(
        RegistryConnectionFactory, project=factory.SelfAttribute("..configuration.project")
    )


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    name = factory.Sequence(lambda n: f"agent-{n}")


class BuildFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Build

    configuration = factory.SubFactory(BuildConfigurationFactory)
    agent = factory.SubFactory(AgentFactory)
    number = factory.Sequence(lambda n: n + 1)
    started_at = factory.LazyFunction(timezone.now)


def ingest(build, records):
    """Stores operation records for `build` as the server stores what its agent sends."""
    from builds.models import EventBatch
    from builds.operations import ingestion

    first = EventBatch.objects.filter(agent_id=build.agent_id).count() * 100_000 + 1
    batch = EventBatch.objects.create(agent_id=build.agent_id, first_seq=first, last_seq=first + len(records),
                                      records=len(records), data=[{**r, "builds": [build.pk]} for r in records],
                                      received_at=timezone.now())
    return ingestion.batch_ingest(batch_id=batch.pk)


def api_token_for(user, **limits) -> str:
    """A new API token of `user`, as a client sends it after `Token `; limits: projects, read_only, expires_at."""
    from connections.services import api_token_issue

    return api_token_issue(user=user, name=limits.pop("name", "test"), **limits)[1]
