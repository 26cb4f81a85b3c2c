"""A small QOM-like object system: types, typed properties and the object tree.

Independent of NVMe: ``device/objects.py`` registers the ``x-nvme-*`` types and
``device/machine.py`` builds the run-time API on ``ObjectTree``.
"""

from nvshell.device.qom.object import Container, Object, resolve_path
from nvshell.device.qom.properties import (BoolType, EnumType, IntType, LinkType, ListType, Property, PropType,
                                   SizeType, StrType, format_size, parse_size)
from nvshell.device.qom.tree import GlobalProperty, ObjectTree, check_id
from nvshell.device.qom.types import (TYPE_CONTAINER, TYPE_DEVICE, TYPE_OBJECT, TYPES, USER_CREATABLE, TypeInfo,
                              TypeRegistry, new_registry)

__all__ = [
    "BoolType", "Container", "EnumType", "GlobalProperty", "IntType", "LinkType", "ListType", "Object", "ObjectTree",
    "PropType", "Property", "SizeType", "StrType", "TYPES", "TYPE_CONTAINER", "TYPE_DEVICE", "TYPE_OBJECT", "TypeInfo",
    "TypeRegistry", "USER_CREATABLE", "check_id", "format_size", "new_registry", "parse_size", "resolve_path",
]
