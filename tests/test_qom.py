"""The object system on its own: properties, types, inheritance, tree (no NVMe)."""

from __future__ import annotations

import pytest

from nvshell.device.errors import ObjectError, ObjectNotFound, PropertyError, TypeNotFound
from nvshell.device.qom import (USER_CREATABLE, BoolType, EnumType, IntType, LinkType, ListType, Object, ObjectTree,
                        Property, SizeType, StrType, TypeInfo, new_registry, parse_size)


def test_sizes():
    assert parse_size("1G") == 1 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("4k") == 4096
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("4096") == 4096
    assert parse_size("0x1000") == 4096
    for bad in ("", "G", "1Q", "-1", "1.3", "abc"):
        with pytest.raises(ValueError):
            parse_size(bad)
    t = SizeType()
    assert t.parse("size", 123) == 123
    assert t.parse("size", "2M") == 2 << 20
    with pytest.raises(PropertyError, match="Invalid parameter type for 'size', expected: size"):
        t.parse("size", [1])
    with pytest.raises(PropertyError, match="Parameter 'size' expects a size"):
        t.parse("size", "lots")
    with pytest.raises(PropertyError, match="Invalid parameter type"):
        t.parse("size", True)


def test_scalar_types():
    assert StrType().parse("serial", 123) == "123"
    assert StrType().parse("serial", True) == "true"
    with pytest.raises(PropertyError, match="expected: string"):
        StrType().parse("serial", [1])
    lba = IntType("uint32", choices=(512, 4096))
    assert lba.parse("lba-size", "4096") == 4096
    with pytest.raises(PropertyError, match="Parameter 'lba-size' expects 512 or 4096"):
        lba.parse("lba-size", 1000)
    u8 = IntType("uint8")
    assert u8.parse("aerl", "0x10") == 16
    with pytest.raises(PropertyError, match="between 0 and 255"):
        u8.parse("aerl", 256)
    with pytest.raises(PropertyError, match="expects an integer"):
        u8.parse("aerl", "x")
    with pytest.raises(PropertyError, match="expected: integer"):
        u8.parse("aerl", True)
    nsid = IntType("uint32", aliases={"auto": 0})
    assert nsid.parse("nsid", "auto") == 0
    assert BoolType().parse("b", "on") is True and BoolType().parse("b", "no") is False
    with pytest.raises(PropertyError):
        BoolType().parse("b", "maybe")
    with pytest.raises(PropertyError, match="Parameter 'doorbells' expects mmap or trap"):
        EnumType(("mmap", "trap")).parse("doorbells", "x")
    lst = ListType(StrType())
    assert lst.parse("attached-to", "a") == ["a"]
    assert lst.parse("attached-to", ["a", "b", "a"]) == ["a", "b"]
    assert lst.parse("attached-to", '["x"]') == ["x"]
    assert lst.name == "strList"


@pytest.fixture
def tree():
    reg = new_registry()
    reg.register(TypeInfo("thing", interfaces=(USER_CREATABLE,), properties=[
        Property("size", SizeType(), required=True, description="bytes"),
        Property("name", StrType(), default="x"),
        Property("level", IntType("uint8"), default=1, mutable=True),
    ]))
    reg.register(TypeInfo("thing-big", parent="thing", properties=[
        Property("extra", BoolType(), default=False),
        Property("peer", LinkType("thing")),
    ]))
    reg.register(TypeInfo("thing-abstract", parent="thing", abstract=True))
    reg.register(TypeInfo("gadget", parent="device", properties=[Property("peer", LinkType("thing"))]))
    return ObjectTree(reg)


def test_inheritance_and_list_types(tree):
    names = [p["name"] for p in tree.type_properties("thing-big")]
    assert names[:3] == ["size", "name", "level"] and "extra" in names
    types = tree.list_types(implements=USER_CREATABLE)
    assert {"name": "thing-big", "parent": "thing"} in types
    assert all(t["name"] != "thing-abstract" for t in types)
    assert any(t["name"] == "thing-abstract" for t in tree.list_types(abstract=True))
    assert [t["name"] for t in tree.list_types(implements="device")] == ["gadget"]
    with pytest.raises(TypeNotFound):
        tree.type_properties("nope")


def test_create_and_tree(tree):
    a = tree.object_add("thing", "a", {"size": "1G"})
    assert a.path() == "/objects/a"
    b = tree.object_add("thing-big", "b", {"size": 4096, "peer": "a"})
    assert tree.qom_get("/objects/b", "peer") == "/objects/a"
    assert tree.qom_get("/objects/a", "size") == 1 << 30
    assert tree.qom_get("/objects/a", "type") == "thing"
    lst = {p["name"]: p["type"] for p in tree.qom_list("/objects/b")}
    assert lst["peer"] == "link<thing>" and lst["size"] == "size" and lst["level"] == "uint8"
    assert lst["extra"] == "bool" and lst["type"] == "string"
    top = {p["name"]: p["type"] for p in tree.qom_list("/objects")}
    assert top["a"] == "child<thing>" and top["b"] == "child<thing-big>"
    for p in tree.qom_list("/objects/b"):  # everything listed is readable
        tree.qom_get("/objects/b", p["name"])
    assert tree.resolve("b") is b
    assert tree.resolve("/objects/b/peer") is a
    g = tree.device_add("gadget", "g0", {"peer": "/objects/a"})
    assert g.path() == "/machine/peripheral/g0"
    anon = tree.device_add("gadget", None, {})
    assert anon.path() == "/machine/peripheral-anon/device[0]"
    text = tree.format_qom_tree("/")
    assert "  /objects (container)\n    /a (thing)\n" in text


def test_errors(tree):
    with pytest.raises(PropertyError, match="Parameter 'size' is missing"):
        tree.object_add("thing", "a", {})
    with pytest.raises(PropertyError, match="Property 'thing.foo' not found"):
        tree.object_add("thing", "a", {"size": 1, "foo": 1})
    with pytest.raises(PropertyError, match="Parameter 'id' is missing"):
        tree.object_add("thing", "", {"size": 1})
    with pytest.raises(PropertyError, match="expects an identifier"):
        tree.object_add("thing", "1bad", {"size": 1})
    with pytest.raises(TypeNotFound, match="invalid object type: nope"):
        tree.object_add("nope", "a", {})
    with pytest.raises(ObjectError, match="abstract"):
        tree.object_add("thing-abstract", "a", {"size": 1})
    with pytest.raises(TypeNotFound, match="not a valid device model name"):
        tree.device_add("thing", "a", {})
    tree.object_add("thing", "a", {"size": 1})
    with pytest.raises(ObjectError, match="Duplicate ID 'a' for object"):
        tree.object_add("thing", "a", {"size": 1})
    with pytest.raises(PropertyError, match="object 'zz' not found"):
        tree.object_add("thing-big", "b", {"size": 1, "peer": "zz"})
    assert tree.find_object("b") is None  # nothing left behind
    with pytest.raises(ObjectNotFound, match="object 'q' not found"):
        tree.object_del("q")
    with pytest.raises(ObjectNotFound, match="Device 'q' not found"):
        tree.device_del("q")
    with pytest.raises(ObjectNotFound):
        tree.qom_list("/objects/q")
    with pytest.raises(PropertyError, match="Property 'thing.nope' not found"):
        tree.qom_get("/objects/a", "nope")


def test_immutability_and_mutable(tree):
    tree.object_add("thing", "a", {"size": 1})
    with pytest.raises(PropertyError, match="cannot be changed after"):
        tree.qom_set("/objects/a", "size", 2)
    tree.qom_set("/objects/a", "level", "7")
    assert tree.qom_get("/objects/a", "level") == 7
    with pytest.raises(PropertyError, match="read-only"):
        tree.qom_set("/objects/a", "type", "x")


def test_delete_refused_while_linked(tree):
    tree.object_add("thing", "a", {"size": 1})
    tree.object_add("thing-big", "b", {"size": 1, "peer": "a"})
    with pytest.raises(ObjectError, match="in use by b"):
        tree.object_del("a")
    tree.object_del("b")
    tree.object_del("a")
    assert tree.objects() == []


def test_complete_failure_rolls_back():
    reg = new_registry()

    class Failing(Object):
        def complete(self, ctx):
            raise ObjectError("nope")
    reg.register(TypeInfo("failing", cls=Failing, interfaces=(USER_CREATABLE,)))
    t = ObjectTree(reg)
    with pytest.raises(ObjectError, match="nope"):
        t.object_add("failing", "f", {})
    assert t.find_object("f") is None
    t.object_add("object", "x", {}) if False else None


def test_getter_failure_is_clean():
    reg = new_registry()
    reg.register(TypeInfo("bad", interfaces=(USER_CREATABLE,), properties=[
        Property("boom", StrType(), read_only=True, getter=lambda o: 1 / 0)]))
    t = ObjectTree(reg)
    t.object_add("bad", "b", {})
    with pytest.raises(PropertyError, match="cannot be read"):
        t.qom_get("/objects/b", "boom")


def test_live_property_reads_the_running_model():
    """Property.live: the user's value until the object is complete and live, then the model's."""
    reg = new_registry()

    class Box(Object):
        model = None

        def complete(self, ctx):
            self.model = {"size": self.get("size") * 2}  # the "device" rounds what it was given

        def is_live(self):
            return self.model is not None
    reg.register(TypeInfo("box", cls=Box, interfaces=(USER_CREATABLE,), properties=[
        Property("size", IntType("uint32"), default=1, live=lambda o: o.model["size"]),
        Property("hint", IntType("uint8"), default=3, mutable=True)]))
    t = ObjectTree(reg)
    b = t.object_add("box", "b", {"size": 5})
    assert t.qom_get("/objects/b", "size") == 10
    b.model["size"] = 11          # changed behind the object model's back (a guest command)
    assert t.qom_get("/objects/b", "size") == 11
    assert t.device_properties(b)[0] == ("size", "11")
    with pytest.raises(PropertyError, match=r"Property 'box.size' cannot be changed after the object is "
                                            r"created \(run-time changes: hint\)"):
        t.qom_set("/objects/b", "size", 3)
    b.model = None                # being torn down: the stored value reads back, never a crash
    assert t.qom_get("/objects/b", "size") == 5
