"""ICAM's networks, one code path for 2D and 3D (``spatial_dims``)."""

from .discriminators import ContentDiscriminator, DomainDiscriminator, DomainDiscriminators
from .encoders import AttributeEncoder, ContentEncoder
from .generator import Generator

__all__ = ["AttributeEncoder", "ContentDiscriminator", "ContentEncoder", "DomainDiscriminator", "DomainDiscriminators",
           "Generator"]
