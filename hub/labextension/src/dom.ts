// A small helper to build dialog bodies without a framework.

export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.entries(attributes).forEach(([key, value]) => {
    if (key === 'className') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  });
  children.forEach(child => node.append(child));
  return node;
}
