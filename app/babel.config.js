// Metro and jest (through jest-expo's babel-jest) both read this.
module.exports = function (api) {
  api.cache(true);
  return { presets: ['babel-preset-expo'] };
};
