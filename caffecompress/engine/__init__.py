"""The array engine: pure functions over arrays taking ``xp`` (numpy or cupy).

Nothing here sees a file, a layer name or protobuf. See DESIGN.md, "The
engine: principles".
"""
