"""The API will own the aiohttp app: REST, the live stream, access control, OpenAPI and the
operator screen. It never writes readings. (Not built yet: a later issue.)"""
