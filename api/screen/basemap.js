// The map's projection (Web Mercator, as tiled base maps use) and the optional base map under the
// sensors: raster tiles from a tile URL template or the API's own PMTiles archive. None by default.
const svgNS = "http://www.w3.org/2000/svg";
const MAX_TILES = 64; // a wall screen's map needs a few dozen; past this the zoom goes one level out

// Web Mercator world coordinates at zoom 0 (0..256).
export function world(lon, lat) {
  const y = Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360));
  return [((lon + 180) / 360) * 256, ((1 - y / Math.PI) / 2) * 256];
}

// Draws into `layer` (an SVG <g>) the tiles covering the view, where world point (wx, wy) is at
// pixel (ox + wx * S, oy + wy * S); `config` is GET /api/v1/basemap (tiles null: nothing drawn).
export function drawBasemap(layer, config, { S, ox, oy, width, height }) {
  layer.replaceChildren();
  if (!config || !config.tiles) return;
  // At zoom z a tile spans 256 / 2^z world units, 256 * S / 2^z pixels: about 256 when 2^z ≈ S.
  let z = Math.min(Math.max(Math.round(Math.log2(S)), config.min_zoom), config.max_zoom);
  let range;
  for (;;) { // the tiles over the view (rows outside the world skipped); too many: one level out
    const n = 2 ** z, size = (256 * S) / n; // a tile's size on screen
    range = { n, size, x0: Math.floor(-ox / size), x1: Math.floor((width - ox) / size),
      y0: Math.max(0, Math.floor(-oy / size)), y1: Math.min(n - 1, Math.floor((height - oy) / size)) };
    if ((range.x1 - range.x0 + 1) * (range.y1 - range.y0 + 1) <= MAX_TILES || z <= config.min_zoom) break;
    z -= 1;
  }
  const { n, size, x0, x1, y0, y1 } = range;
  for (let ty = y0; ty <= y1; ty++) {
    for (let tx = x0; tx <= x1; tx++) {
      const wrapped = ((tx % n) + n) % n; // the world repeats east and west
      const href = config.tiles.replaceAll("{z}", z).replaceAll("{x}", wrapped).replaceAll("{y}", ty);
      const image = document.createElementNS(svgNS, "image");
      // Half a pixel more each way: neighbours overlap instead of showing a hairline seam between them.
      for (const [k, v] of Object.entries({ class: "tile", href, x: ox + tx * size, y: oy + ty * size,
        width: size + 0.5, height: size + 0.5, preserveAspectRatio: "none" })) image.setAttribute(k, v);
      layer.append(image);
    }
  }
  if (config.attribution) {
    const text = document.createElementNS(svgNS, "text");
    text.setAttribute("class", "attribution");
    text.setAttribute("x", width - 6);
    text.setAttribute("y", height - 6);
    text.setAttribute("text-anchor", "end"); // its right end at the map's right edge
    text.textContent = config.attribution;
    layer.append(text);
  }
}
